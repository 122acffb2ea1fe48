//! `cargo xtask bench`: direct vs Shunt vs HAProxy vs nginx, latency percentiles and CPU, side by
//! side in one run (tests/src/bin/shunt-bench-matrix). Installs what the bench needs (haproxy,
//! nginx and h2load from apt, oha from crates.io), builds the bench in release and runs it. Results go to
//! `target/bench/`: results.md, results.json, README-section.md and the profiles.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::bail;
use clap::Args;

use crate::setup::{Env, run as exec, step};

#[derive(Args)]
pub struct BenchArgs {
    /// Short repetitions (one unless --reps) and a shorter sweep (under 2 minutes once built), for
    /// checking a change. The figures are noisy.
    #[arg(long)]
    quick: bool,
    /// Repetitions per point (default: 5; 1 with --quick).
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Repetitions per rate of the sweep (default: --reps).
    #[arg(long, value_name = "N")]
    sweep_reps: Option<usize>,
    /// Seconds per run (default: 4; 1.5 with --quick).
    #[arg(long, value_name = "S")]
    secs: Option<f64>,
    /// Target rates of the sweep, requests/s, comma-separated.
    #[arg(long, value_name = "R,R,...")]
    rates: Option<String>,
    /// Skip the perf profiles of the two proxies.
    #[arg(long)]
    no_profile: bool,
    /// CPUs (`taskset -c` list) for the proxy under test; the load generator and the backends
    /// use CPU 0. Default 1; 0 puts everything on one core (an experiment, not the matrix).
    #[arg(long, value_name = "LIST")]
    proxy_cpu: Option<String>,
    /// Also run C and D with the agent built from this git revision (C′, D′), interleaved at
    /// every fixed-rate and saturation point, and report after vs before against the spread of
    /// the before runs. The revision is built (release) in `target/bench/before/`.
    #[arg(long, value_name = "REV")]
    before: Option<String>,
    /// Run only these groups (comma-separated: fixed, max, newconn, sweep), for checking one
    /// part; `newconn` alone measures the capture hooks' time per connect() in seconds.
    #[arg(long, value_name = "GROUP,...")]
    only: Option<String>,
    /// Run the fixed-rate points of these protocols only (comma-separated: h1, h2c), e.g. to
    /// compare h2c builds with `--only fixed --protos h2c --before REV`.
    #[arg(long, value_name = "PROTO,...")]
    protos: Option<String>,
}

/// Commands the bench runs, and the Debian package providing each.
const APT_TOOLS: [(&str, &str); 5] = [
    ("haproxy", "haproxy"),
    // nginx-light: the HTTP core with http2 and map, no extra modules.
    ("nginx", "nginx-light"),
    ("h2load", "nghttp2-client"),
    ("taskset", "util-linux"),
    ("perf", "linux-perf"),
];

fn has(path: &std::ffi::OsStr, tool: &str) -> bool {
    std::env::split_paths(path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(tool).is_file())
}

fn works(path: &std::ffi::OsStr, tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .env("PATH", path)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn install_tools(env: &Env) -> anyhow::Result<()> {
    let mut pkgs: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(t, _)| !has(&env.path, t))
        .map(|(_, p)| *p)
        .collect();
    pkgs.dedup();
    if pkgs.is_empty() {
        step("bench tools (haproxy, nginx, h2load, taskset, perf): installed");
    } else {
        step(&format!("installing apt packages: {}", pkgs.join(" ")));
        exec(Command::new("apt-get").args(["update", "-q"]))?;
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if works(&env.path, "oha", "--version") {
        step("oha: installed");
    } else {
        step(
            "installing oha from crates.io (cargo install --locked oha; first time only, minutes)",
        );
        exec(
            Command::new("cargo")
                .args(["install", "--locked", "oha"])
                .env("PATH", &env.path),
        )?;
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Builds `shunt-under-test` (release) from git revision `rev`, in a checkout of its own under
/// `dir` with its own target directory (two checkouts of one workspace must not share one).
/// Returns the binary.
fn build_before(env: &Env, rev: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let resolved = Command::new("git")
        .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .output()?;
    if !resolved.status.success() {
        bail!("--before {rev}: not a git revision of this repository");
    }
    let commit = String::from_utf8_lossy(&resolved.stdout).trim().to_string();
    // Absolute: cargo runs in the extracted sources, and a relative target directory would land
    // inside them.
    let dir = std::path::absolute(dir)?;
    let src = dir.join("src");
    step(&format!(
        "building the before agent from {rev} ({commit:.12})"
    ));
    if src.exists() {
        std::fs::remove_dir_all(&src)?;
    }
    std::fs::create_dir_all(&src)?;
    // `git archive` rather than a worktree: nothing to unregister if the bench is interrupted.
    let archive = Command::new("git")
        .args(["archive", "--format=tar", &commit])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    exec(
        Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&src)
            .stdin(archive.stdout.expect("piped stdout")),
    )?;
    let target = dir.join("target");
    exec(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "tests",
                "--bin",
                "shunt-under-test",
            ])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &target)
            .env("PATH", &env.path),
    )?;
    Ok(std::path::absolute(
        target.join("release/shunt-under-test"),
    )?)
}

pub fn run(env: &Env, args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let uid = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("the bench needs root: it creates network namespaces and a cgroup, and loads eBPF");
    }
    install_tools(env)?;
    step("building the bench (release)");
    exec(
        Command::new("cargo")
            .args(["build", "--release", "-p", "tests"])
            .args(["--bin", "shunt-bench-matrix", "--bin", "bench-backend"])
            .args(["--bin", "shunt-under-test", "--bin", "netpeer"])
            .env("PATH", &env.path),
    )?;
    let target = target_dir();
    let out = target.join("bench");
    let bin = target.join("release/shunt-bench-matrix");
    let before = match &args.before {
        Some(rev) => Some(build_before(env, rev, &out.join("before"))?),
        None => None,
    };
    let mut command = String::from("cargo xtask bench");
    let mut cmd = Command::new(&bin);
    cmd.arg("--out").arg(&out).env("PATH", &env.path);
    if args.quick {
        cmd.arg("--quick");
        command.push_str(" --quick");
    }
    let mut opt = |flag: &str, v: Option<String>| {
        if let Some(v) = v {
            cmd.args([flag, &v]);
            command.push_str(&format!(" {flag} {v}"));
        }
    };
    opt("--reps", args.reps.map(|v| v.to_string()));
    opt("--sweep-reps", args.sweep_reps.map(|v| v.to_string()));
    opt("--secs", args.secs.map(|v| v.to_string()));
    opt("--rates", args.rates);
    opt("--proxy-cpu", args.proxy_cpu);
    opt("--only", args.only);
    opt("--protos", args.protos);
    if let (Some(rev), Some(before)) = (&args.before, &before) {
        cmd.arg("--before").arg(before);
        command.push_str(&format!(" --before {rev}"));
    }
    if args.no_profile {
        cmd.arg("--no-profile");
        command.push_str(" --no-profile");
    }
    cmd.args(["--command", &command]);
    step(&format!(
        "running {} ({})",
        Path::new(&bin).display(),
        if args.quick {
            "quick: about 2 minutes"
        } else {
            "full matrix: about 35 minutes"
        }
    ));
    exec(&mut cmd)?;
    eprintln!(
        "bench done in {:.0?}: {}/results.md, results.json, README-section.md",
        started.elapsed(),
        out.display()
    );
    Ok(())
}
