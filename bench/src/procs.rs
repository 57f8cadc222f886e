//! Child processes (super-peers, leaves, nginx, the tools being timed) and the clean-up that
//! runs however the harness ends.
//!
//! Every process the harness starts is recorded by id in [`REGISTRY`] until it is reaped, and
//! so is every network namespace and scratch folder it creates. Normal ends (and errors, and
//! panics) go through the `Drop` of [`Proc`], [`crate::testbed::Testbed`] and [`Scratch`];
//! Ctrl-C, SIGTERM and SIGHUP go to a thread that tears down whatever the registry still holds
//! ([`install_signal_handler`]); and every child is told to end if the harness dies
//! (`PR_SET_PDEATHSIG`). Processes are only ever ended by their own id.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What must be undone if the harness is interrupted.
#[derive(Debug, Default)]
pub struct Registry {
    /// Ids of running child processes.
    pub pids: Vec<u32>,
    /// Network namespaces created.
    pub namespaces: Vec<String>,
    /// Scratch folders created.
    pub folders: Vec<PathBuf>,
}

/// The harness's live processes, namespaces and scratch folders.
pub static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    namespaces: Vec::new(),
    folders: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `signal` to process `pid` (one of ours).
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// True while a process with this id exists (and is not a zombie we have reaped).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (call before any other thread starts, so
/// every thread inherits the mask) and starts a thread that waits for them, tears down what
/// [`REGISTRY`] holds, and exits with 130. Children start with a clean mask (`child_setup`).
pub fn install_signal_handler() -> anyhow::Result<()> {
    // SAFETY: plain libc calls on a sigset_t we own.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask failed: {rc}");
        }
        set
    };
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid, initialised signal set.
            unsafe { libc::sigwait(&set, &mut sig) };
            eprintln!("\nbench: interrupted (signal {sig}); cleaning up");
            teardown_all();
            std::process::exit(130);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Ends every registered process (SIGTERM, then SIGKILL after a grace period), deletes every
/// registered namespace and scratch folder. Used on interruption only.
pub fn teardown_all() {
    let (pids, namespaces, folders) = {
        let mut r = registry();
        (
            std::mem::take(&mut r.pids),
            std::mem::take(&mut r.namespaces),
            std::mem::take(&mut r.folders),
        )
    };
    for &pid in &pids {
        signal(pid, libc::SIGTERM);
    }
    let until = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < until {
        thread::sleep(Duration::from_millis(20));
    }
    for &pid in &pids {
        if alive(pid) {
            signal(pid, libc::SIGKILL);
        }
    }
    for ns in namespaces {
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
    }
    for f in folders {
        let _ = fs::remove_dir_all(f);
    }
}

pub(crate) fn register_namespace(name: &str) {
    registry().namespaces.push(name.to_string());
}

pub(crate) fn forget_namespace(name: &str) {
    registry().namespaces.retain(|n| n != name);
}

/// Prepares a child: it starts with no signal blocked (the harness blocks SIGINT, SIGTERM
/// and SIGHUP for its signal thread, and a mask is inherited), and it gets SIGTERM if the
/// harness dies, even by SIGKILL, so no server outlives it. Children are spawned from the main
/// thread only, which lives as long as the harness.
fn child_setup(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: sigemptyset, sigprocmask and prctl are async-signal-safe and touch only the
    // child's own state.
    unsafe {
        cmd.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// A scratch folder, deleted on drop (and on interruption).
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `path` (which must not exist yet).
    pub fn create(path: PathBuf) -> anyhow::Result<Scratch> {
        fs::create_dir_all(&path)
            .with_context(|| format!("creating the scratch folder {}", path.display()))?;
        registry().folders.push(path.clone());
        Ok(Scratch { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subfolder, created.
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.path.join(name);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        registry().folders.retain(|f| f != &self.path);
    }
}

/// A background process (server, node). Ended (SIGTERM, then SIGKILL) when dropped. Its
/// stdout and stderr go to `log`.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its output in `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        child_setup(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        registry().pids.push(child.id());
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a line of its output contains `needle`, and returns that line. Fails if the
    /// process exits first or `limit` passes.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> anyhow::Result<String> {
        let until = Instant::now() + limit;
        loop {
            let text = self.output();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.child.try_wait().context("checking a child")? {
                bail!(
                    "{} exited ({status}) before printing {needle:?}; its output:\n{}",
                    self.name,
                    tail(&text, 20)
                );
            }
            if Instant::now() > until {
                bail!(
                    "{} did not print {needle:?} within {limit:?}; its output:\n{}",
                    self.name,
                    tail(&text, 20)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("checking a child")? {
            bail!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                tail(&self.output(), 20)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id();
        if let Ok(None) = self.child.try_wait() {
            signal(pid, libc::SIGTERM);
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        registry().pids.retain(|&p| p != pid);
    }
}

/// A finished command: how long it took and what it printed.
#[derive(Debug)]
pub struct Timed {
    /// Wall time from spawning to exit.
    pub elapsed: Duration,
    /// Its standard output.
    pub stdout: String,
    /// The CPU time (user and system) it used.
    pub cpu: Duration,
    /// Its peak resident memory, in bytes.
    pub peak_rss: u64,
}

/// CPU time used by the children this process has waited for, so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs `cmd` to completion, timing it from spawn to exit; it is killed after `limit`.
/// A non-zero exit is an error that quotes its output.
pub fn run_timed(
    name: &str,
    mut cmd: Command,
    logs: &Path,
    limit: Duration,
) -> anyhow::Result<Timed> {
    let (out_path, err_path) = (
        logs.join(format!("{name}.out")),
        logs.join(format!("{name}.err")),
    );
    let out =
        File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let err =
        File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    child_setup(&mut cmd);
    // Only this thread reaps children, and only this one while it runs: the growth of the
    // children's CPU time is this command's.
    let cpu_before = children_cpu();
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name}: {cmd:?}"))?;
    let pid = child.id();
    registry().pids.push(pid);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(limit) {
            signal(pid, libc::SIGKILL);
            return true;
        }
        false
    });
    let waited = wait_with_usage(pid);
    let elapsed = started.elapsed();
    let cpu = children_cpu().saturating_sub(cpu_before);
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    registry().pids.retain(|&p| p != pid);
    let (status, peak_rss) = waited.with_context(|| format!("waiting for {name}"))?;
    drop(child);
    let read = |p: &Path| {
        let mut s = String::new();
        let _ = File::open(p).and_then(|mut f| f.read_to_string(&mut s));
        s
    };
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    if killed {
        bail!(
            "{name} did not finish within {limit:?} and was killed; its output:\n{}{}",
            tail(&stdout, 10),
            tail(&stderr, 10)
        );
    }
    if !status.success() {
        bail!(
            "{name} failed ({status}): {cmd:?}\n{}{}",
            tail(&stdout, 10),
            tail(&stderr, 20)
        );
    }
    Ok(Timed {
        elapsed,
        stdout,
        cpu,
        peak_rss,
    })
}

/// Waits for child `pid` to exit: its status and its own peak resident memory in bytes
/// (`wait4`, where `getrusage` would give the largest of all children reaped so far).
fn wait_with_usage(pid: u32) -> std::io::Result<(ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: wait4 fills the status and the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: as above; pid is our own child, not yet reaped.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            // ru_maxrss is in kilobytes on Linux.
            return Ok((ExitStatus::from_raw(status), usage.ru_maxrss as u64 * 1024));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Runs a short command and returns its standard output; a failure quotes its error output.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    child_setup(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `n` lines of `text`, indented.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].iter().map(|l| format!("    {l}\n")).collect()
}

/// Resident memory (VmRSS) and its peak (VmHWM) of process `pid`, in bytes.
pub fn memory_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{path} has no {name}"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("cannot read {line:?} in {path}"))?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) that process `pid` has used so far.
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are
    // plain. utime and stime are fields 14 and 15, in clock ticks.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("cannot parse {path}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("cannot parse field {} of {path}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// CPU time used so far by process `pid` and every live process below it (nginx's workers).
pub fn tree_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut parent_of = Vec::new();
    for e in fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parent_of.push((p, pp));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    let mut total = Duration::ZERO;
    for p in tree {
        // A process may end between the listing and the read.
        total += cpu_time_of(p).unwrap_or(Duration::ZERO);
    }
    Ok(total)
}

/// CPU time used by the whole machine (all CPUs, busy time only) and by this process with
/// every child it has reaped, at one moment: the difference between two samples tells how
/// much CPU other programs took meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    machine: Duration,
    ours: Duration,
}

impl CpuSample {
    /// Takes a sample.
    pub fn now() -> CpuSample {
        let machine = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let f: Vec<u64> = s
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: busy = all but idle, iowait.
                let busy = f.iter().take(8).sum::<u64>() - f.get(3)? - f.get(4)?;
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                Some(Duration::from_secs_f64(busy as f64 / hz))
            })
            .unwrap_or_default();
        // SAFETY: getrusage fills the struct we pass.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        CpuSample {
            at: Instant::now(),
            machine,
            ours: tv(u.ru_utime) + tv(u.ru_stime) + children_cpu(),
        }
    }

    /// The average number of CPUs kept busy since `earlier`, by anything.
    pub fn machine_busy_since(&self, earlier: &CpuSample) -> f64 {
        let wall = (self.at - earlier.at).as_secs_f64().max(1e-9);
        self.machine.saturating_sub(earlier.machine).as_secs_f64() / wall
    }

    /// The average number of CPUs other programs kept busy since `earlier` (servers still
    /// running count as other programs until they are reaped).
    pub fn others_since(&self, earlier: &CpuSample) -> f64 {
        let wall = (self.at - earlier.at).as_secs_f64().max(1e-9);
        let machine = self.machine.saturating_sub(earlier.machine);
        let ours = self.ours.saturating_sub(earlier.ours);
        machine.saturating_sub(ours).as_secs_f64() / wall
    }
}
