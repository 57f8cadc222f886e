//! A delay line for one host of the testbed: everything the host sends to the testbed's
//! network reaches it a set time later, so the testbed has the round trip of a real path
//! (this kernel has no `netem`, nor the `fq` qdisc that could hold packets by timestamp).
//!
//! In the host's namespace a TUN device takes, by a routing rule, every packet the host itself
//! sends to the testbed's subnet (`ip rule add iif lo lookup 100`: locally made packets only).
//! A thread of the harness reads each one from the device, keeps it for the delay, and writes it
//! back: the kernel then takes it as arriving on the TUN device, and forwards it out of the
//! host's real link by the main table. What comes in to the host is not delayed, so every round
//! trip of the host grows by the delay once.
//!
//! The TUN device lives as long as the thread's descriptor: dropping the [`DelayLine`] stops
//! the thread, which removes the device and so the route through it. The rule and the
//! settings stay with the namespace (the testbed deletes it after each case); a second delay
//! line in the same namespace is not supported.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procs::output;
use crate::testbed::Host;

/// The TUN device's name inside the host's namespace.
const DEVICE: &str = "cnpydelay0";
/// The routing table the rule sends the host's own packets to.
const TABLE: &str = "100";

/// A running delay line; stopped (and its device gone) on drop.
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Packets delayed so far.
    packets: Arc<std::sync::atomic::AtomicU64>,
}

impl DelayLine {
    /// Delays what `host` sends to `subnet` (such as "10.77.0.0/24"; the host's own address is
    /// `host.ip`) by `delay`.
    pub fn start(host: &Host, subnet: &str, delay: Duration) -> anyhow::Result<DelayLine> {
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let ns = host.ns.clone();
        let thread = {
            let (stop, packets) = (stop.clone(), packets.clone());
            std::thread::Builder::new()
                .name("delay line".into())
                .spawn(move || {
                    let tun = match open_tun(&ns) {
                        Ok(fd) => {
                            let _ = ready_tx.send(Ok(()));
                            fd
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    run(&tun, delay, &stop, &packets);
                })
                .context("starting the delay line's thread")?
        };
        let line = DelayLine {
            stop,
            thread: Some(thread),
            packets,
        };
        ready_rx
            .recv()
            .context("the delay line's thread ended before its device was made")??;
        let ns = host.ns.as_str();
        let sysctl = |key: &str| {
            output(
                Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
                    .arg(format!("{key}=1")),
            )
            .with_context(|| format!("setting {key} in {ns}"))
        };
        // The packets written back come in on the device with the host's own address as their
        // source: accepted (not a martian), and forwarded out of the real link.
        sysctl("net.ipv4.ip_forward")?;
        sysctl(&format!("net.ipv4.conf.{DEVICE}.accept_local"))?;
        // `eth0` too: the check of a packet coming in there looks up the way back as if the
        // host sent it, which the rule above sends to the TUN device (strict filtering, the
        // default on some systems, would then drop everything that comes in).
        for key in ["all", "default", "eth0", DEVICE] {
            output(
                Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
                    .arg(format!("net.ipv4.conf.{key}.rp_filter=0")),
            )
            .with_context(|| format!("turning off rp_filter for {key} in {ns}"))?;
        }
        let src = host.ip.to_string();
        for args in [
            vec!["link", "set", DEVICE, "mtu", "1500", "up"],
            vec![
                "route", "replace", subnet, "dev", DEVICE, "src", &src, "table", TABLE,
            ],
            vec!["rule", "add", "iif", "lo", "lookup", TABLE, "pref", "100"],
        ] {
            output(Command::new("ip").args(["-n", ns]).args(&args))
                .with_context(|| format!("ip -n {ns} {}", args.join(" ")))?;
        }
        Ok(line)
    }

    /// Packets delayed so far (a check that the line is in the path).
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Enters namespace `ns` (this thread only) and makes the TUN device there.
fn open_tun(ns: &str) -> anyhow::Result<OwnedFd> {
    let path = format!("/var/run/netns/{ns}");
    let nsfile = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns only reads the descriptor, and moves the calling thread alone (the delay
    // line's own) into the namespace.
    if unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("entering {ns}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a plain open of a path given as a C string.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        bail!("opening /dev/net/tun: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    /// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..DEVICE.len()].copy_from_slice(DEVICE.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is laid out as.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        bail!(
            "making TUN device {DEVICE} in {ns}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(tun)
}

/// Reads packets from `tun` and writes each back `delay` after it came, in order, until
/// `stop`.
fn run(tun: &OwnedFd, delay: Duration, stop: &AtomicBool, packets: &std::sync::atomic::AtomicU64) {
    let fd = tun.as_raw_fd();
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, p) = held.pop_front().expect("just seen");
            // SAFETY: writes `p`, a whole packet, to the device.
            let _ = unsafe { libc::write(fd, p.as_ptr().cast(), p.len()) };
        }
        let wait = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd and one timespec, valid for the call; no signal mask.
        let ready = unsafe { libc::ppoll(&mut pfd, 1, &timeout, std::ptr::null()) };
        if ready <= 0 {
            continue;
        }
        let came = Instant::now();
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            packets.fetch_add(1, Ordering::Relaxed);
            held.push_back((came + delay, buf[..n as usize].to_vec()));
        }
    }
}
