//! `cargo xtask test`: the project's one test command (the README's and CI's).
use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::bail;
use clap::Args;

use crate::setup::{EBPF_NIGHTLY, Env, run as exec, step};

#[derive(Args)]
pub struct TestArgs {
    /// Skip fmt and clippy.
    #[arg(long)]
    no_lint: bool,
}

fn cargo(env: &Env) -> Command {
    let mut c = Command::new("cargo");
    c.env("PATH", &env.path);
    c
}

pub fn run(env: &Env, args: TestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if !args.no_lint {
        step("cargo fmt --check");
        exec(cargo(env).args(["fmt", "--all", "--check"]))?;
        step("clippy (userspace, -D warnings)");
        exec(cargo(env).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        step("clippy (eBPF, bpfel-unknown-none, -D warnings)");
        exec(
            cargo(env)
                .arg(format!("+{EBPF_NIGHTLY}"))
                .args([
                    "clippy",
                    "-p",
                    "agent-ebpf",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                ])
                .args(["-Z", "build-std=core", "--", "-D", "warnings"])
                .env_remove("RUSTUP_TOOLCHAIN")
                .env("CARGO_TARGET_DIR", "target/ebpf-clippy"),
        )?;
    }
    crate::client::build(env)?;
    crate::client::check_macos(env)?;
    step("unit tests");
    exec(cargo(env).args(["test", "-p", "agent", "-p", "agent-common", "-p", "xtask"]))?;
    step("integration tests (real kernel, network namespaces)");
    exec(cargo(env).args(["test", "-p", "tests"]))?;
    step("demo, end to end (shunt-demo --check: the mini-cluster of `cargo xtask demo`)");
    crate::demo::test_step(env)?;
    step("checking that no namespace, cgroup or pin was left behind");
    check_leftovers()?;
    eprintln!("all tests passed in {:.1?}", started.elapsed());
    Ok(())
}

/// Name prefixes of what the integration tests and the demo create (cgroups, /run dirs, mounts).
const PREFIXES: [&str; 2] = ["shunt-test-", "shunt-demo"];
/// Processes only the demo runs (comm names).
const DEMO_PROCESSES: [&str; 2] = ["shunt-demo", "demo-app"];

fn check_leftovers() -> anyhow::Result<()> {
    let mut left = Vec::new();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("shunt-"))
                .map(|l| format!("netns {l}")),
        );
    }
    for dir in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/run"] {
        if let Ok(rd) = fs::read_dir(dir) {
            left.extend(
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| PREFIXES.iter().any(|p| n.starts_with(p)))
                    })
                    .map(|p| p.display().to_string()),
            );
        }
    }
    if Path::new("/proc/self/mounts").exists() {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        left.extend(
            mounts
                .lines()
                .filter(|l| PREFIXES.iter().any(|p| l.contains(&format!("/{p}"))))
                .map(|l| format!("mount {l}")),
        );
    }
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.filter_map(Result::ok) {
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            // A zombie holds nothing (no namespace, cgroup or socket); some inits never reap.
            let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            if DEMO_PROCESSES.contains(&comm.trim()) && !zombie {
                left.push(format!(
                    "process {} ({})",
                    e.file_name().to_string_lossy(),
                    comm.trim()
                ));
            }
        }
    }
    if !left.is_empty() {
        bail!("tests left state behind:\n  {}", left.join("\n  "));
    }
    Ok(())
}
