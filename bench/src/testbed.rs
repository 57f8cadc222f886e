//! A testbed of hosts in network namespaces: one bridge, one veth pair per host, and each
//! capped host's upload limited by a `tbf` qdisc on its own end of the pair, so the cap applies
//! to the host as a whole (every connection of every program on it), as on a real network.
//!
//! ```text
//!   cnpy-sp  10.77.0.1  (super-peer, uncapped)
//!   cnpy-c   10.77.0.2  (the downloading client, uncapped)        all on bridge br0
//!   cnpy-h1  10.77.0.11 … cnpy-hN (sources, upload capped)        in namespace cnpy-br
//! ```
//!
//! Every host runs TCP CUBIC (Linux's default), whatever the machine's own setting.
//!
//! Addresses are in 10.77.0.0/24 and exist only inside these namespaces; nothing is routed
//! anywhere else. Every namespace is named with the prefix [`PREFIX`], so one left behind by a
//! crashed run is found and removed ([`clean_stale`]) before a new testbed is built.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procs::{self, output};

/// The prefix of every namespace the harness creates.
pub const PREFIX: &str = "cnpy-";

/// One host of the testbed.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

impl Host {
    /// A command to run `program` on this host.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

/// The namespaces, links and caps of one testbed; torn down on drop.
#[derive(Debug)]
pub struct Testbed {
    namespaces: Vec<String>,
    /// The super-peer's host (uncapped).
    pub superpeer: Host,
    /// The downloading client (uncapped).
    pub client: Host,
    /// The source hosts, each with its upload capped.
    pub sources: Vec<Host>,
}

/// The link-layer address of the testbed's host number `i` (fixed, so every host can be told
/// every other's before any traffic: see [`Testbed::create`]).
fn mac(i: usize) -> String {
    format!("02:77:00:00:{:02x}:{:02x}", i >> 8, i & 0xff)
}

/// Runs `cmd` (named `what` in errors) with `input` on its standard input; fails with what it
/// wrote to standard error if it fails.
fn run_with_input(cmd: &mut Command, input: &str, what: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {what}"))?;
    let written = child
        .stdin
        .take()
        .with_context(|| format!("{what} has no standard input"))?
        .write_all(input.as_bytes());
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))?;
    written.with_context(|| format!("writing to {what}"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `lines` of `ip` commands in namespace `ns` (`ip -batch`, from standard input).
fn ip_batch(ns: &str, lines: &str) -> anyhow::Result<()> {
    let what = format!("ip -n {ns} -batch");
    run_with_input(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        lines,
        &what,
    )
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    output(Command::new("ip").args(args)).map(|_| ())
}

/// Whether network namespaces can be created here (a probe namespace is added and removed).
pub fn available() -> Result<(), String> {
    let name = format!("{PREFIX}probe-{}", std::process::id());
    match Command::new("ip")
        .args(["netns", "add", &name])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            Ok(())
        }
        Ok(o) => Err(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `ip`: {e}")),
    }
}

/// Removes namespaces left by an earlier run that crashed: ends the processes still inside
/// them (by id) and deletes them. Only namespaces named with [`PREFIX`] are touched.
pub fn clean_stale() -> anyhow::Result<()> {
    let list = output(Command::new("ip").args(["netns", "list"]))?;
    for name in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
    {
        eprintln!("bench: removing namespace {name} left by an earlier run");
        let pids = output(Command::new("ip").args(["netns", "pids", name])).unwrap_or_default();
        let pids: Vec<u32> = pids.lines().filter_map(|p| p.trim().parse().ok()).collect();
        for &p in &pids {
            procs::signal(p, libc::SIGKILL);
        }
        ip(&["netns", "del", name])
            .with_context(|| format!("deleting the stale namespace {name}"))?;
    }
    Ok(())
}

impl Testbed {
    /// Builds the testbed with `sources` capped hosts.
    pub fn create(sources: usize, cap_mbit: u32) -> anyhow::Result<Testbed> {
        clean_stale()?;
        let mut tb = Testbed {
            namespaces: Vec::new(),
            superpeer: Host {
                ns: format!("{PREFIX}sp"),
                ip: Ipv4Addr::new(10, 77, 0, 1),
            },
            client: Host {
                ns: format!("{PREFIX}c"),
                ip: Ipv4Addr::new(10, 77, 0, 2),
            },
            sources: (1..=sources)
                .map(|i| Host {
                    ns: format!("{PREFIX}h{i}"),
                    ip: Ipv4Addr::new(10, 77, 0, 10 + i as u8),
                })
                .collect(),
        };
        let bridge = format!("{PREFIX}br");
        tb.add_namespace(&bridge)?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        let hosts: Vec<(Host, bool)> = [(tb.superpeer.clone(), false), (tb.client.clone(), false)]
            .into_iter()
            .chain(tb.sources.iter().map(|h| (h.clone(), true)))
            .collect();
        for (i, (host, capped)) in hosts.iter().enumerate() {
            tb.add_namespace(&host.ns)?;
            let port = format!("p{i}");
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &host.ns,
                "address",
                &mac(i),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &bridge,
            ])
            .with_context(|| format!("creating the link of {}", host.ns))?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host.ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host.ns, "link", "set", "lo", "up"])?;
            // Every host runs CUBIC, Linux's (and Windows') default, whatever this machine's own
            // setting is (a namespace starts with the machine's). With BBR, which this machine
            // had set, senders kept filling the small queue below while it dropped: at N = 100
            // the hosts' queues dropped about a quarter of the packets offered (1.56 million in
            // Canopy's run, 1.35 million in aria2c's); with CUBIC, 24,866 in Canopy's run.
            let cubic = Command::new("ip")
                .args(["netns", "exec", &host.ns, "sh", "-c"])
                .arg("echo cubic > /proc/sys/net/ipv4/tcp_congestion_control")
                .status();
            if !cubic.is_ok_and(|s| s.success()) {
                eprintln!(
                    "testbed: could not set CUBIC in {} (the machine's congestion control stays)",
                    host.ns
                );
            }
            if *capped {
                // The bucket holds 2 ms of traffic (at least 64 KiB, so a segmentation-offload
                // packet fits); the queue holds 50 ms.
                let rate_bytes = cap_mbit as u64 * 1_000_000 / 8;
                let burst = (rate_bytes / 500).max(64 << 10);
                output(Command::new("ip").args(["netns", "exec", &host.ns]).args([
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                    "root",
                    "tbf",
                    "rate",
                    &format!("{cap_mbit}mbit"),
                    "burst",
                    &burst.to_string(),
                    "latency",
                    "50ms",
                ]))
                .with_context(|| format!("capping the upload of {}", host.ns))?;
            }
        }
        // Every host knows every other's link-layer address from the start, as permanent
        // entries. Learnt by ARP, hosts that all talk to all need hosts² entries in the
        // kernel's neighbour table, which is one for every namespace: past its gc_thresh3
        // (1,024 by default) new entries are refused ("neighbor table overflow") and
        // connections between some hosts time out, as they did at N = 100. Permanent entries
        // are exempt from those limits and from garbage collection.
        for (i, (host, _)) in hosts.iter().enumerate() {
            let lines: String = hosts
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, (other, _))| {
                    format!(
                        "neigh replace {} lladdr {} dev eth0 nud permanent\n",
                        other.ip,
                        mac(j)
                    )
                })
                .collect();
            ip_batch(&host.ns, &lines)
                .with_context(|| format!("adding the neighbour entries of {}", host.ns))?;
        }
        tb.wait_links()?;
        Ok(tb)
    }

    /// Puts `host` behind a home router's rule: connections it did not open are dropped (a
    /// stateful filter on its own namespace's input, `nft`), so nobody can dial it while what
    /// it dials works. The address is not translated: for a path's cost that changes nothing,
    /// and `leaf/tests/nat.rs` covers real address translation.
    pub fn firewall(&self, host: &Host) -> anyhow::Result<()> {
        let rules = "table inet canopy_bench_nat {\n  chain input {\n    type filter hook input \
                     priority 0; policy accept;\n    iif lo accept\n    ct state \
                     established,related accept\n    ct state new drop\n  }\n}\n";
        let what = format!("nft (Debian's nftables) in {}", host.ns);
        let mut nft = host.command(std::path::Path::new("nft"));
        run_with_input(nft.args(["-f", "-"]), rules, &what)
    }

    /// The round trip from `from` to `to` on the testbed: the median time of 21 TCP connects
    /// (a connect takes one round trip), made from a thread that enters `from`'s namespace.
    pub fn round_trip(&self, from: &Host, to: std::net::SocketAddr) -> anyhow::Result<Duration> {
        let path = format!("/var/run/netns/{}", from.ns);
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<Duration> {
                use std::os::fd::AsRawFd;
                let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns only reads the descriptor, and moves this thread alone (a
                // thread of its own, ended below) into the namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("entering {}: {}", from.ns, std::io::Error::last_os_error());
                }
                let mut times = Vec::new();
                for _ in 0..21 {
                    let t = Instant::now();
                    let c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
                        .with_context(|| format!("connecting to {to} from {}", from.ns))?;
                    times.push(t.elapsed());
                    drop(c);
                }
                times.sort();
                Ok(times[times.len() / 2])
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the round-trip thread panicked"))?
        })
    }

    fn add_namespace(&mut self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name]).with_context(|| format!("creating namespace {name}"))?;
        procs::register_namespace(name);
        self.namespaces.push(name.to_string());
        Ok(())
    }

    /// Waits until the bridge forwards (its ports leave the learning state).
    fn wait_links(&self) -> anyhow::Result<()> {
        let bridge = format!("{PREFIX}br");
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let links = output(Command::new("ip").args(["-n", &bridge, "-o", "link", "show"]))?;
            let ports: Vec<&str> = links.lines().filter(|l| l.contains("master br0")).collect();
            let states = output(Command::new("bridge").args(["-n", &bridge, "link", "show"]))
                .unwrap_or_default();
            let forwarding = states.matches("state forwarding").count();
            if ports.len() == 2 + self.sources.len() && forwarding >= ports.len() {
                return Ok(());
            }
            if Instant::now() > until {
                bail!(
                    "the testbed bridge did not come up ({forwarding} of {} ports forwarding)",
                    ports.len()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            procs::forget_namespace(ns);
        }
    }
}
