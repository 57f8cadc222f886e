//! What the cases need before they run: the reference tools (installed from Debian's packages
//! when missing), the release binaries of Canopy, and a description of the machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::procs::output;

/// A reference tool: the program and the Debian package that has it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// The program's name.
    pub program: &'static str,
    /// Its Debian package.
    pub package: &'static str,
}

/// Every reference the cases use.
pub const TOOLS: [Tool; 4] = [
    Tool {
        program: "aria2c",
        package: "aria2",
    },
    Tool {
        program: "nginx",
        package: "nginx",
    },
    Tool {
        program: "b3sum",
        package: "b3sum",
    },
    Tool {
        program: "curl",
        package: "curl",
    },
];

/// Where `program` is: on `PATH`, or in the system folders (`nginx` is in `/usr/sbin`).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The reference tools, found or installed.
#[derive(Debug, Default)]
pub struct References {
    found: Vec<(&'static str, PathBuf)>,
    /// Why some could not be installed.
    pub problem: Option<String>,
}

impl References {
    /// The path of `program`, or why it is missing.
    pub fn get(&self, program: &str) -> anyhow::Result<PathBuf> {
        match self.found.iter().find(|(p, _)| *p == program) {
            Some((_, path)) => Ok(path.clone()),
            None => bail!(
                "the reference `{program}` is not installed{}",
                self.problem
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            ),
        }
    }

    /// One line per reference with its version.
    pub fn versions(&self) -> Vec<String> {
        self.found
            .iter()
            .map(|(name, path)| {
                let flag = if *name == "nginx" { "-v" } else { "--version" };
                let out = Command::new(path).arg(flag).output();
                let text = match out {
                    Ok(o) => {
                        let s = String::from_utf8_lossy(&o.stdout).into_owned()
                            + &String::from_utf8_lossy(&o.stderr);
                        s.lines().next().unwrap_or("").trim().to_string()
                    }
                    Err(e) => format!("? ({e})"),
                };
                format!("{name}: {text}")
            })
            .collect()
    }
}

/// Finds the reference tools and installs the missing ones with apt (one `apt-get update`,
/// one `apt-get install`). Services a package would start (nginx's) are held back with a
/// `policy-rc.d` for the duration, if the machine has none already.
pub fn references() -> References {
    let missing: Vec<Tool> = TOOLS
        .iter()
        .copied()
        .filter(|t| find_program(t.program).is_none())
        .collect();
    let mut refs = References::default();
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
        eprintln!("bench: installing {} with apt-get", packages.join(", "));
        if let Err(e) = apt_install(&packages) {
            eprintln!("bench: {e:#}");
            refs.problem = Some(format!("{e:#}"));
        }
    }
    for t in TOOLS {
        if let Some(p) = find_program(t.program) {
            refs.found.push((t.program, p));
        }
    }
    refs
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        fs::write(
            policy,
            "#!/bin/sh\n# canopy bench: no services during install\nexit 101\n",
        )
        .and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(policy, fs::Permissions::from_mode(0o755))
        })
        .context("writing /usr/sbin/policy-rc.d")?;
    }
    let result = (|| {
        let status = Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get update")?;
        if !status.success() {
            bail!("apt-get update failed ({status})");
        }
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get install")?;
        if !status.success() {
            bail!("apt-get install {} failed ({status})", packages.join(" "));
        }
        Ok(())
    })();
    if ours {
        let _ = fs::remove_file(policy);
    }
    result
}

/// The Canopy binaries the cases run.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `leaf`.
    pub leaf: PathBuf,
    /// `superpeer`.
    pub superpeer: PathBuf,
}

/// Builds the release binaries of `leaf` and `superpeer` (cargo prints its progress).
pub fn build(workspace: &Path) -> anyhow::Result<Bins> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: cargo build --release -p leaf -p superpeer");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "leaf", "-p", "superpeer"])
        .current_dir(workspace)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p leaf -p superpeer failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bins = Bins {
        leaf: target.join("release/leaf"),
        superpeer: target.join("release/superpeer"),
    };
    for b in [&bins.leaf, &bins.superpeer] {
        if !b.is_file() {
            bail!("the build did not leave {}", b.display());
        }
    }
    Ok(bins)
}

/// The machine, as BENCHMARKS.md describes it.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs (`nproc`).
    pub nproc: usize,
    /// Memory, in bytes.
    pub memory: u64,
    /// Kernel release.
    pub kernel: String,
    /// The file system the scratch folders are on (`df`).
    pub disk: String,
}

/// Reads the machine's description from `/proc` and a few commands.
pub fn machine(scratch: &Path) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let kernel = output(Command::new("uname").arg("-r"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let disk = output(Command::new("df").args(["-hT"]).arg(scratch))
        .ok()
        .and_then(|s| {
            s.lines()
                .nth(1)
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu,
        nproc,
        memory,
        kernel,
        disk,
    }
}
