//! Sharing from behind a real NAT: network namespaces this test creates (and deletes, pass or
//! fail), with an nftables `masquerade` router that drops new inbound connections, as a home
//! router does.
//!
//! ```text
//!   home (192.168.77.2) ── router (192.168.77.1 | 80.77.1.2) ── inet (80.77.1.1, 80.77.2.1) ── pub (80.77.2.2)
//!   the leaf behind NAT      masquerade, new inbound dropped      super-peer :7700              a public leaf
//!                                                                 (80.77.3.1)
//!   home2 (192.168.78.2) ── router2 (192.168.78.1 | 80.77.3.2) ──────┘
//!   another leaf behind NAT  the same rules
//! ```
//!
//! The "internet" addresses look public because miniupnpd refuses to forward to a private
//! external address; they exist only inside these namespaces.
//!
//! - With nothing forwarded, the leaf learns it cannot be reached (with the router's address),
//!   and a download from it still completes: the downloader asks through the super-peer, and
//!   the leaf connects out to it.
//! - With miniupnpd on the router, the leaf maps its port (UPnP IGD; with UPnP off, PCP or
//!   NAT-PMP), is found reachable, and removes the mapping when it stops.
//! - With a port forwarded by hand (`--external-port`), the leaf announces that port.
//! - Between two leaves behind two such routers, the download completes through a hole the
//!   two punch at once (TCP simultaneous open, coordinated through the super-peer).
//!
//! Needs root, `ip` (iproute2), `nft` (nftables) and `miniupnpd` (miniupnpd-nftables);
//! `.ci/run` installs them.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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

/// The namespaces of the picture above, with the router's rules loaded; `tag` tells the
/// tests' namespaces apart.
fn home_behind_nat(tag: &str) -> Namespaces {
    home_behind_nats(tag, false)
}

/// As [`home_behind_nat`]; with `symmetric`, the second router gives each connection a random
/// port (`masquerade fully-random`), as a symmetric NAT does.
fn home_behind_nats(tag: &str, symmetric: bool) -> Namespaces {
    let prefix = format!("cn{}{tag}", std::process::id());
    let mut ns = Namespaces {
        prefix,
        names: Vec::new(),
    };
    for short in ["inet", "nat", "home", "pub", "nat2", "home2"] {
        let name = ns.name(short);
        sh(&["ip", "netns", "add", &name]);
        ns.names.push(name);
    }
    let (inet, nat, home, public, nat2, home2) = (
        ns.name("inet"),
        ns.name("nat"),
        ns.name("home"),
        ns.name("pub"),
        ns.name("nat2"),
        ns.name("home2"),
    );
    // Each pair is made inside its namespaces: nothing is created in the test's own.
    let pairs = [
        (&inet, "i-nat", &nat, "wan"),
        (&inet, "i-pub", &public, "eth"),
        (&nat, "lan", &home, "eth"),
        (&inet, "i-nat2", &nat2, "wan"),
        (&nat2, "lan", &home2, "eth"),
    ];
    for (a, ia, b, ib) in pairs {
        sh(&[
            "ip", "-n", a, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", b,
        ]);
    }
    let addrs = [
        (&inet, "i-nat", "80.77.1.1/24"),
        (&inet, "i-pub", "80.77.2.1/24"),
        (&nat, "wan", "80.77.1.2/24"),
        (&nat, "lan", "192.168.77.1/24"),
        (&home, "eth", "192.168.77.2/24"),
        (&public, "eth", "80.77.2.2/24"),
        (&inet, "i-nat2", "80.77.3.1/24"),
        (&nat2, "wan", "80.77.3.2/24"),
        (&nat2, "lan", "192.168.78.1/24"),
        (&home2, "eth", "192.168.78.2/24"),
    ];
    for (n, dev, addr) in addrs {
        sh(&["ip", "-n", n, "addr", "add", addr, "dev", dev]);
        sh(&["ip", "-n", n, "link", "set", dev, "up"]);
    }
    for n in [&inet, &nat, &home, &public, &nat2, &home2] {
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    for (n, gw) in [
        (&nat, "80.77.1.1"),
        (&home, "192.168.77.1"),
        (&public, "80.77.2.1"),
        (&nat2, "80.77.3.1"),
        (&home2, "192.168.78.1"),
    ] {
        sh(&["ip", "-n", n, "route", "add", "default", "via", gw]);
    }
    for n in [&inet, &nat, &nat2] {
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
    // A home router: the LAN leaves through the router's address; nothing new comes in but
    // what miniupnpd (when it runs) or a test forwards, in the chains named for it.
    let rules = r#"
table inet filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" accept
        jump miniupnpd
    }
    chain miniupnpd {
    }
}
table inet nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
        oifname "wan" masquerade
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
"#;
    let file = std::env::temp_dir().join(format!("{}-rules.nft", ns.prefix));
    std::fs::write(&file, rules).unwrap();
    let load = |n: &str, file: &Path| {
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "nft",
            "-f",
            file.to_str().unwrap(),
        ]);
    };
    load(&nat, &file);
    if symmetric {
        let random = file.with_extension("random.nft");
        std::fs::write(
            &random,
            rules.replace("masquerade", "masquerade fully-random"),
        )
        .unwrap();
        load(&nat2, &random);
        let _ = std::fs::remove_file(&random);
    } else {
        load(&nat2, &file);
    }
    let _ = std::fs::remove_file(&file);
    ns
}

fn leaf_in(ns: &Namespaces, where_: &str, data: &Path, sp: &str, listen: &str) -> Command {
    let mut c = ns.exec(where_, LEAF);
    c.arg("--data-dir")
        .arg(data)
        .args(["--superpeer", sp, "--listen", listen]);
    c.env_remove("CANOPY_DATA_DIR")
        .env_remove("CANOPY_SUPERPEER")
        .env_remove("CANOPY_EXTERNAL_PORT")
        .env_remove("CANOPY_EXTERNAL_PORT_FILE")
        .env_remove("CANOPY_NO_PORT_MAPPING");
    c
}

/// The super-peer on the "internet", listening on every interface on port 7700.
fn start_superpeer_in(ns: &Namespaces, data: &Path) -> Proc {
    start_superpeer_on(ns, data, 7700)
}

/// A super-peer on the "internet", listening on every interface on `port`.
fn start_superpeer_on(ns: &Namespaces, data: &Path, port: u16) -> Proc {
    let mut cmd = ns.exec("inet", superpeer_bin());
    cmd.args(["--listen", &format!("0.0.0.0:{port}"), "--data-dir"])
        .arg(data);
    let sp = Proc::spawn(&mut cmd);
    sp.wait_for("listening on");
    sp
}

/// Writes `base/music/NAME`, `len` bytes of a pattern (`mul`, `shift`) that differs from test
/// to test, and returns them.
fn song(base: &Path, name: &str, len: u32, mul: u32, shift: u32) -> Vec<u8> {
    let content: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(mul) >> shift) as u8)
        .collect();
    std::fs::create_dir_all(base.join("music")).unwrap();
    std::fs::write(base.join("music").join(name), &content).unwrap();
    content
}

/// The leaf at home, sharing `folder`, with `extra` arguments before `share`.
fn start_home_leaf(ns: &Namespaces, data: &Path, folder: &Path, extra: &[&str]) -> Proc {
    let p = Proc::spawn(
        leaf_in(ns, "home", data, "80.77.1.1:7700", "0.0.0.0:7001")
            .args(extra)
            .arg("share")
            .arg(folder),
    );
    p.wait_for("sharing");
    p
}

fn status(data: &Path) -> serde_json::Value {
    status_json(data, "80.77.1.1:7700")
}

/// `leaf get` of `id` into `out` with `leaf` (a command of the downloading leaf): it must
/// succeed, by way of `how` ("reverse connection", "hole punched", "relayed by a super-peer").
/// Returns what it said.
fn get_by(mut leaf: Command, id: &str, out: &Path, how: &str) -> String {
    let done = run(leaf.args(["get", id, "--out"]).arg(out));
    let said = format!("{}{}", text(&done.stdout), text(&done.stderr));
    println!("{said}");
    assert!(done.status.success(), "{said}");
    // "(HOW)", or "(HOW; the first after N ms)".
    let by = [
        format!("({how})"),
        format!("({how}; "),
        format!("({how} at "),
    ];
    assert!(by.iter().any(|b| said.contains(b.as_str())), "{said}");
    said
}

/// Whether a TCP connection from the public side to `addr` gets through.
fn connects_from_pub(ns: &Namespaces, addr: &str) -> bool {
    let (host, port) = addr.split_once(':').unwrap();
    let script = format!("timeout 3 bash -c '</dev/tcp/{host}/{port}' && echo open || echo closed");
    let out = run(ns.exec("pub", "bash").args(["-c", &script]));
    text(&out.stdout).trim() == "open"
}

/// Behind a router that maps nothing (no UPnP, PCP or NAT-PMP daemon), `leaf status` says why
/// there is no external port and how to announce one forwarded by hand.
#[test]
fn a_router_that_maps_nothing_leaves_status_pointing_to_external_port() {
    let ns = home_behind_nat("x");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let _sp = start_superpeer_in(&ns, &base.join("sp"));
    std::fs::create_dir_all(base.join("nothing")).unwrap();
    let home_data = base.join("home-data");
    let _leaf = start_home_leaf(&ns, &home_data, &base.join("nothing"), &[]);
    wait_until("the router to be asked and to refuse", 40, || {
        let s = status(&home_data);
        s["port_mapping"]["how"].is_string() && s["reach"]["reachable"] == false
    });
    assert!(status(&home_data)["port_mapping"]["port"].is_null());
    let shown =
        run(leaf_in(&ns, "home", &home_data, "80.77.1.1:7700", "0.0.0.0:7001").arg("status"));
    let said = text(&shown.stdout);
    assert!(said.contains("external  none ("), "{said}");
    assert!(said.contains("--external-port N"), "{said}");
}

#[test]
fn a_source_behind_nat_is_found_known_unreachable_and_still_downloaded_from() {
    let ns = home_behind_nat("r");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let sp = start_superpeer_in(&ns, &base.join("sp"));

    // The source, at home behind the router, which forwards nothing.
    let content: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let music = base.join("home-music/Nils Frahm");
    std::fs::create_dir_all(&music).unwrap();
    std::fs::write(music.join("Says (live at home).flac"), &content).unwrap();
    let home_data = base.join("home-data");
    let source = start_home_leaf(
        &ns,
        &home_data,
        &base.join("home-music"),
        &["--no-port-mapping"],
    );

    // The downloader, on the public side.
    let pub_data = base.join("pub-data");
    std::fs::create_dir_all(base.join("nothing")).unwrap();
    let downloader = Proc::spawn(
        leaf_in(&ns, "pub", &pub_data, "80.77.2.1:7700", "0.0.0.0:7002")
            .arg("share")
            .arg(base.join("nothing")),
    );
    downloader.wait_for("sharing 0 files");

    // The super-peer's connection back to the source failed, and the source was told so, with
    // the router's address: the one the super-peer sees it at.
    wait_until("the source to learn it cannot be reached", 40, || {
        status(&home_data)["reach"]["reachable"] == false
    });
    assert_eq!(status(&home_data)["reach"]["observed"], "80.77.1.2:7001");
    wait_until("the downloader to learn it can be reached", 40, || {
        status(&pub_data)["reach"]["reachable"] == true
    });
    let shown =
        run(leaf_in(&ns, "home", &home_data, "80.77.1.1:7700", "0.0.0.0:7001").arg("status"));
    assert!(
        text(&shown.stdout)
            .contains("reachable no: a super-peer could not connect to 80.77.1.2:7001"),
        "{}",
        text(&shown.stdout)
    );
    // Nothing gets in directly: the router drops it.
    assert!(!connects_from_pub(&ns, "80.77.1.2:7001"));

    let id = blake3::hash(&content).to_hex().to_string();
    let pub_leaf = || leaf_in(&ns, "pub", &pub_data, "80.77.2.1:7700", "0.0.0.0:7002");
    let out = run(pub_leaf().args(["search", "nils", "frahm", "--json", "--wait", "2"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&id), "{}", text(&out.stdout));

    let dl = base.join("downloads");
    get_by(pub_leaf(), &id, &dl, "reverse connection");
    assert!(std::fs::read(dl.join("Says (live at home).flac")).unwrap() == content);
    // Served by the source over the connection it made, counted on both sides.
    assert!(uploaded(&home_data, "80.77.1.1:7700") >= content.len() as u64);
    for data in [&home_data, &pub_data] {
        assert!(status(data)["indirect"]["reverse"].as_u64() >= Some(1));
    }
    // Its shares are listed the same way: the node that searched knows how to ask for a
    // connection back.
    let before = status(&pub_data)["indirect"]["reverse"].as_u64().unwrap();
    let listed = run(pub_leaf().args(["browse", "80.77.1.2:7001"]));
    let said = format!("{}{}", text(&listed.stdout), text(&listed.stderr));
    assert!(listed.status.success(), "{said}");
    assert!(said.contains("Says (live at home).flac"), "{said}");
    assert_eq!(
        status(&pub_data)["indirect"]["reverse"].as_u64(),
        Some(before + 1)
    );
    drop((source, downloader, sp));
}

#[test]
fn a_leaf_behind_a_upnp_router_maps_its_port_is_reachable_and_unmaps_when_it_stops() {
    maps_its_port_and_unmaps_it("u", true, &["UPnP"]);
}

#[test]
fn a_leaf_behind_a_router_without_upnp_maps_its_port_with_pcp_or_nat_pmp() {
    // miniupnpd speaks NAT-PMP, and PCP where it was built with it: the leaf asks PCP first
    // and falls back to NAT-PMP.
    maps_its_port_and_unmaps_it("m", false, &["PCP", "NAT-PMP"]);
}

/// A leaf behind a router running miniupnpd (with UPnP IGD on or off; NAT-PMP and PCP on)
/// maps its port, is found reachable through it, and removes the mapping when it stops.
/// `how`: the protocols it may have used.
fn maps_its_port_and_unmaps_it(tag: &str, upnp: bool, how: &[&str]) {
    let ns = home_behind_nat(tag);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    // miniupnpd on the router: UPnP IGD (if `upnp`), NAT-PMP and PCP on the LAN side,
    // forwarding from the WAN side, in the chains the router's rules left for it.
    let conf = base.join("miniupnpd.conf");
    let upnp = if upnp { "yes" } else { "no" };
    std::fs::write(
        &conf,
        format!(
            "ext_ifname=wan\nlistening_ip=lan\nhttp_port=0\nenable_upnp={upnp}\nenable_natpmp=yes\n\
         secure_mode=yes\nsystem_uptime=yes\nuuid=3d5bd8a0-6d5a-4a3c-9e2f-1c2a3b4c5d6e\n\
         upnp_table_name=filter\nupnp_nat_table_name=nat\nupnp_forward_chain=miniupnpd\n\
         upnp_nat_chain=prerouting_miniupnpd\nupnp_nat_postrouting_chain=postrouting_miniupnpd\n\
         allow 1024-65535 192.168.77.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
        ),
    )
    .unwrap();
    let mut upnp = ns.exec("nat", "miniupnpd");
    upnp.arg("-f")
        .arg(&conf)
        .arg("-d")
        .arg("-P")
        .arg(base.join("miniupnpd.pid"));
    let router = Proc::spawn(&mut upnp);
    let _sp = start_superpeer_in(&ns, &base.join("sp"));
    // What miniupnpd has forwarded: the rules in its chain on the router.
    let forwards = || {
        let out = run(ns.exec("nat", "nft").args([
            "list",
            "chain",
            "inet",
            "nat",
            "prerouting_miniupnpd",
        ]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).contains("dnat ip to 192.168.77.2:7001")
    };
    assert!(!forwards(), "nothing forwarded before");

    std::fs::create_dir_all(base.join("music")).unwrap();
    std::fs::write(base.join("music/a song.ogg"), b"la la la").unwrap();
    let home_data = base.join("home-data");
    let mut home = start_home_leaf(&ns, &home_data, &base.join("music"), &[]);
    wait_until(
        "the leaf to be found reachable through its mapping",
        40,
        || status(&home_data)["reach"]["reachable"] == true,
    );
    let s = status(&home_data);
    assert_eq!(s["reach"]["observed"], "80.77.1.2:7001");
    assert_eq!(s["port_mapping"]["port"], 7001);
    let said = s["port_mapping"]["how"].as_str().unwrap();
    println!("port mapping: {said}");
    assert!(
        how.iter()
            .any(|h| said.starts_with(&format!("{h}: the router at 192.168.77.1:"))),
        "{said}"
    );
    assert!(forwards());
    assert!(connects_from_pub(&ns, "80.77.1.2:7001"), "forwarded now");

    // Stopped, it removes the mapping: the port is closed again.
    let (status, _) = home.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(!forwards(), "the forward is removed");
    drop(router);
}

#[test]
fn a_port_forwarded_by_hand_is_announced_and_found_reachable() {
    let ns = home_behind_nat("f");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    // The user forwarded the router's port 7100 to the leaf's 7001 (or a VPN did).
    for rule in [
        "add rule inet nat prerouting_miniupnpd iifname wan tcp dport 7100 dnat ip to 192.168.77.2:7001",
        "add rule inet filter miniupnpd ip daddr 192.168.77.2 tcp dport 7001 accept",
    ] {
        let mut args = vec!["ip", "netns", "exec"];
        let name = ns.name("nat");
        args.push(&name);
        args.push("nft");
        args.extend(rule.split(' '));
        sh(&args);
    }
    let _sp = start_superpeer_in(&ns, &base.join("sp"));
    std::fs::create_dir_all(base.join("music")).unwrap();
    std::fs::write(base.join("music/a song.ogg"), b"la la la").unwrap();
    let home_data = base.join("home-data");
    let _home = start_home_leaf(
        &ns,
        &home_data,
        &base.join("music"),
        &["--external-port", "7100"],
    );
    wait_until(
        "the leaf to be found reachable at the forwarded port",
        40,
        || status(&home_data)["reach"]["reachable"] == true,
    );
    let s = status(&home_data);
    assert_eq!(s["reach"]["observed"], "80.77.1.2:7100");
    assert_eq!(s["port_mapping"]["port"], 7100);
    assert_eq!(s["port_mapping"]["how"], "--external-port 7100");
}

#[test]
fn two_leaves_behind_nat_punch_a_hole_and_the_download_completes() {
    let ns = home_behind_nat("p");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let _sp = start_superpeer_in(&ns, &base.join("sp"));

    let content = song(base, "Kiasmos - Looped.flac", 3_000_000, 2246822519, 9);
    let home_data = base.join("home-data");
    let _source = start_home_leaf(&ns, &home_data, &base.join("music"), &["--no-port-mapping"]);

    let other_data = base.join("home2-data");
    std::fs::create_dir_all(base.join("nothing")).unwrap();
    let other = || leaf_in(&ns, "home2", &other_data, "80.77.3.1:7700", "0.0.0.0:7002");
    let downloader = Proc::spawn(
        other()
            .arg("--no-port-mapping")
            .arg("share")
            .arg(base.join("nothing")),
    );
    downloader.wait_for("sharing 0 files");
    for (data, observed) in [
        (&home_data, "80.77.1.2:7001"),
        (&other_data, "80.77.3.2:7002"),
    ] {
        wait_until("both leaves to learn they cannot be reached", 40, || {
            status(data)["reach"]["reachable"] == false
        });
        assert_eq!(status(data)["reach"]["observed"], observed);
    }

    let id = blake3::hash(&content).to_hex().to_string();
    let dl = base.join("downloads");
    get_by(other(), &id, &dl, "hole punched");
    assert!(std::fs::read(dl.join("Kiasmos - Looped.flac")).unwrap() == content);
    assert!(uploaded(&home_data, "80.77.1.1:7700") >= content.len() as u64);
    for data in [&home_data, &other_data] {
        assert!(status(data)["indirect"]["punched"].as_u64() >= Some(1));
    }
}

#[test]
fn two_super_peers_tell_a_leaf_the_kind_of_its_nat() {
    let ns = home_behind_nats("k", true);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let _sp = start_superpeer_in(&ns, &base.join("sp"));
    let _second = start_superpeer_on(&ns, &base.join("sp2"), 7701);
    std::fs::create_dir_all(base.join("nothing")).unwrap();
    // Each leaf attaches to both super-peers; found unreachable, it probes both from its
    // listen port.
    let home_data = base.join("home-data");
    let _home = start_home_leaf(
        &ns,
        &home_data,
        &base.join("nothing"),
        &["--no-port-mapping", "--superpeer", "80.77.1.1:7701"],
    );
    let sym_data = base.join("home2-data");
    let sym = Proc::spawn(
        leaf_in(&ns, "home2", &sym_data, "80.77.3.1:7700", "0.0.0.0:7002")
            .args([
                "--no-port-mapping",
                "--superpeer",
                "80.77.3.1:7701",
                "share",
            ])
            .arg(base.join("nothing")),
    );
    sym.wait_for("sharing");
    for (data, kind) in [
        (&home_data, "endpoint-independent"),
        (&sym_data, "symmetric"),
    ] {
        wait_until(
            "both super-peers to tell where the leaf is seen from",
            40,
            || status(data)["reach"]["nat"] == kind,
        );
        assert_eq!(status(data)["reach"]["reachable"], false);
    }
    let shown =
        run(leaf_in(&ns, "home2", &sym_data, "80.77.3.1:7700", "0.0.0.0:7002").arg("status"));
    assert!(
        text(&shown.stdout).contains("nat       symmetric"),
        "{}",
        text(&shown.stdout)
    );
}

#[test]
fn a_leaf_behind_a_symmetric_nat_downloads_through_a_relay() {
    let ns = home_behind_nats("y", true);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let _sp = start_superpeer_in(&ns, &base.join("sp"));
    let _second = start_superpeer_on(&ns, &base.join("sp2"), 7701);

    let content = song(
        base,
        "Ólafur Arnalds - Saman.flac",
        2_000_000,
        3266489917,
        7,
    );
    let home_data = base.join("home-data");
    let _source = start_home_leaf(
        &ns,
        &home_data,
        &base.join("music"),
        &["--no-port-mapping", "--superpeer", "80.77.1.1:7701"],
    );
    let sym_data = base.join("home2-data");
    std::fs::create_dir_all(base.join("nothing")).unwrap();
    let sym = || leaf_in(&ns, "home2", &sym_data, "80.77.3.1:7700", "0.0.0.0:7002");
    let downloader = Proc::spawn(
        sym()
            .args([
                "--no-port-mapping",
                "--superpeer",
                "80.77.3.1:7701",
                "share",
            ])
            .arg(base.join("nothing")),
    );
    downloader.wait_for("sharing 0 files");
    wait_until("the downloader to learn its NAT is symmetric", 40, || {
        status(&sym_data)["reach"]["nat"] == "symmetric"
    });
    wait_until("the source to learn it cannot be reached", 40, || {
        status(&home_data)["reach"]["reachable"] == false
    });

    let id = blake3::hash(&content).to_hex().to_string();
    let dl = base.join("downloads");
    get_by(sym(), &id, &dl, "relayed by a super-peer");
    assert!(std::fs::read(dl.join("Ólafur Arnalds - Saman.flac")).unwrap() == content);
    for data in [&home_data, &sym_data] {
        let s = status(data);
        assert!(s["indirect"]["relayed"].as_u64() >= Some(1), "{s}");
        assert_eq!(
            s["indirect"]["punched"], 0,
            "no hole punched from a symmetric NAT"
        );
    }
}

/// The testbed of [`home_behind_nat`] with IPv6 beside IPv4: every host has a global IPv6
/// address (documentation prefixes, which exist only inside these namespaces), and the first
/// router forwards IPv6 as it is, as many home routers do, while it still masquerades IPv4.
/// The second router's LAN has IPv4 only.
///
/// ```text
///   home 2001:db8:77::2 ── router 2001:db8:77::1 | 2001:db8:1::2 ── inet 2001:db8:1::1, 2001:db8:2::1 ── pub 2001:db8:2::2
/// ```
fn home_behind_nat_with_ipv6(tag: &str) -> Namespaces {
    let ns = home_behind_nat(tag);
    let (inet, nat, home, public) = (
        ns.name("inet"),
        ns.name("nat"),
        ns.name("home"),
        ns.name("pub"),
    );
    // (`nodad`: usable at once, not after duplicate address detection.)
    for (n, dev, addr) in [
        (&inet, "i-nat", "2001:db8:1::1/64"),
        (&inet, "i-pub", "2001:db8:2::1/64"),
        (&nat, "wan", "2001:db8:1::2/64"),
        (&nat, "lan", "2001:db8:77::1/64"),
        (&home, "eth", "2001:db8:77::2/64"),
        (&public, "eth", "2001:db8:2::2/64"),
    ] {
        sh(&[
            "ip", "-n", n, "-6", "addr", "add", addr, "dev", dev, "nodad",
        ]);
    }
    for (n, route, gw) in [
        (&nat, "default", "2001:db8:1::1"),
        (&home, "default", "2001:db8:77::1"),
        (&public, "default", "2001:db8:2::1"),
        (&inet, "2001:db8:77::/64", "2001:db8:1::2"),
    ] {
        sh(&["ip", "-n", n, "-6", "route", "add", route, "via", gw]);
    }
    for n in [&inet, &nat] {
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.forwarding=1",
        ]);
    }
    // IPv6 is forwarded as it is: nothing dropped, and no NAT (the rules' masquerade is for
    // both families).
    for (verb, table, chain) in [
        ("add", "filter", "forward"),
        ("insert", "nat", "postrouting"),
    ] {
        sh(&[
            "ip", "netns", "exec", &nat, "nft", verb, "rule", "inet", table, chain, "meta",
            "nfproto", "ipv6", "accept",
        ]);
    }
    ns
}

/// A leaf behind an IPv4 NAT with a global IPv6 address: a super-peer linked over each family
/// finds it unreachable over IPv4 and reachable over IPv6, and says so in its hits. A
/// downloader with IPv6 dials it there directly (no connection back, no relay); one with
/// IPv4 only still gets the file, through a hole punched over IPv4.
#[test]
fn a_leaf_behind_an_ipv4_nat_is_reached_over_ipv6_and_still_over_ipv4() {
    let ns = home_behind_nat_with_ipv6("6");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let _sp = start_superpeer_in(&ns, &base.join("sp"));

    let content = song(base, "Hania Rani - Eden.flac", 3_000_000, 2654435761, 13);
    let home_data = base.join("home-data");
    let home = || leaf_in(&ns, "home", &home_data, "80.77.1.1:7700", "0.0.0.0:7001");
    let _source = Proc::spawn(
        home()
            .args(["--superpeer", "[2001:db8:1::1]:7700", "--no-port-mapping"])
            .arg("share")
            .arg(base.join("music")),
    );
    _source.wait_for("sharing");
    wait_until(
        "the super-peer to check the source over each family",
        40,
        || {
            let s = status(&home_data);
            s["reach"]["reachable"] == false && s["reach_also"]["reachable"] == true
        },
    );
    let s = status(&home_data);
    assert_eq!(s["reach"]["observed"], "80.77.1.2:7001", "{s}");
    assert_eq!(s["reach_also"]["observed"], "[2001:db8:77::2]:7001", "{s}");
    let shown = run(home().arg("status"));
    assert!(
        text(&shown.stdout).contains("also      reachable over IPv6 at [2001:db8:77::2]:7001"),
        "{}",
        text(&shown.stdout)
    );

    // A downloader with both families: the file comes over IPv6, dialled.
    let pub_data = base.join("pub-data");
    std::fs::create_dir_all(base.join("nothing")).unwrap();
    let public = || leaf_in(&ns, "pub", &pub_data, "80.77.2.1:7700", "0.0.0.0:7002");
    let downloader = Proc::spawn(
        public()
            .args(["--superpeer", "[2001:db8:2::1]:7700", "--no-port-mapping"])
            .arg("share")
            .arg(base.join("nothing")),
    );
    downloader.wait_for("sharing 0 files");
    let id = blake3::hash(&content).to_hex().to_string();
    let found = run(public().args(["search", "hania", "eden", "--json", "--wait", "2"]));
    let said = text(&found.stdout);
    assert!(said.contains(&id), "{said}");
    let dl = base.join("downloads");
    let said = get_by(public(), &id, &dl, "direct");
    // Named at either address: dialled at the IPv6 one.
    assert!(
        said.contains("from [2001:db8:77::2]:7001 (direct")
            || said.contains("(direct at [2001:db8:77::2]:7001"),
        "{said}"
    );
    assert!(std::fs::read(dl.join("Hania Rani - Eden.flac")).unwrap() == content);
    for data in [&home_data, &pub_data] {
        let s = status(data);
        for how in ["reverse", "punched", "relayed"] {
            assert_eq!(s["indirect"][how], 0, "{how}: {s}");
        }
    }

    // A downloader with IPv4 only, behind the other router: over IPv4, through a hole both
    // punch (its own IPv6 dial fails at once, for want of a route). The first downloader,
    // which has the file now, is gone: the source behind the router is the only one.
    drop(downloader);
    let v4_data = base.join("home2-data");
    let v4_only = || leaf_in(&ns, "home2", &v4_data, "80.77.3.1:7700", "0.0.0.0:7003");
    let other = Proc::spawn(
        v4_only()
            .arg("--no-port-mapping")
            .arg("share")
            .arg(base.join("nothing")),
    );
    other.wait_for("sharing 0 files");
    wait_until(
        "the IPv4-only leaf to learn it cannot be reached",
        40,
        || status_json(&v4_data, "80.77.3.1:7700")["reach"]["reachable"] == false,
    );
    let s = status_json(&v4_data, "80.77.3.1:7700");
    assert!(s["reach_also"].is_null(), "no link over IPv6: {s}");
    let dl2 = base.join("downloads2");
    get_by(v4_only(), &id, &dl2, "hole punched");
    assert!(std::fs::read(dl2.join("Hania Rani - Eden.flac")).unwrap() == content);
    drop(other);
}

/// Behind a router that lets in anyone the leaf has talked to (an address-restricted NAT,
/// emulated: the router's port 7001 leads to the leaf only from addresses it connected to),
/// the super-peer's check gets through, and the leaf is found reachable where others cannot
/// reach it. A downloader dials it as its hit says, and when that fails, asks it to connect
/// back: the download still completes.
#[test]
fn a_source_found_reachable_that_is_not_is_still_downloaded_from() {
    let ns = home_behind_nat("a");
    let nat = ns.name("nat");
    for rule in [
        "add set inet nat contacted { type ipv4_addr; flags dynamic,timeout; timeout 10m; }",
        "insert rule inet nat postrouting oifname wan update @contacted { ip daddr }",
        "add rule inet nat prerouting_miniupnpd iifname wan tcp dport 7001 ip saddr @contacted dnat ip to 192.168.77.2:7001",
        "add rule inet filter miniupnpd ct status dnat accept",
    ] {
        let mut args = vec!["ip", "netns", "exec", &nat, "nft"];
        args.extend(rule.split(' '));
        sh(&args);
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let _sp = start_superpeer_in(&ns, &base.join("sp"));
    let content = song(base, "Grouper - Heavy Water.flac", 2_000_000, 2246822519, 5);
    let home_data = base.join("home-data");
    let _source = start_home_leaf(&ns, &home_data, &base.join("music"), &["--no-port-mapping"]);
    wait_until("the super-peer's check to get through", 40, || {
        status(&home_data)["reach"]["reachable"] == true
    });
    assert_eq!(status(&home_data)["reach"]["observed"], "80.77.1.2:7001");
    // But not from elsewhere.
    assert!(!connects_from_pub(&ns, "80.77.1.2:7001"));

    let pub_data = base.join("pub-data");
    std::fs::create_dir_all(base.join("nothing")).unwrap();
    let public = || leaf_in(&ns, "pub", &pub_data, "80.77.2.1:7700", "0.0.0.0:7002");
    let downloader = Proc::spawn(
        public()
            .arg("--no-port-mapping")
            .arg("share")
            .arg(base.join("nothing")),
    );
    downloader.wait_for("sharing 0 files");
    let id = blake3::hash(&content).to_hex().to_string();
    let dl = base.join("downloads");
    get_by(public(), &id, &dl, "reverse connection");
    assert!(std::fs::read(dl.join("Grouper - Heavy Water.flac")).unwrap() == content);
}
