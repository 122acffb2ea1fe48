//! `cargo xtask soak [--minutes N]`: the real agent between network namespaces under mixed load
//! (HTTP/1.1, h2c, gRPC at 500 requests/s, half keyed), route churn every second, a rolling
//! restart every 2 minutes and one SIGKILL (see tests/src/bin/shunt-soak). Needs root. Writes
//! target/soak/ (summary.md, summary.json, every request, the agents' logs) and fails when a
//! pass criterion does.
use std::{path::Path, process::Command};

use clap::Args;

use crate::setup::{Env, run as exec, step};

#[derive(Args)]
pub struct SoakArgs {
    /// How long the load runs; with 1 (CI), the restart is at 20 s and the SIGKILL at 40 s.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
}

pub fn run(env: &Env, args: SoakArgs) -> anyhow::Result<()> {
    if !crate::demo::is_root() {
        anyhow::bail!("the soak needs root (network namespaces, cgroups, eBPF): run it with sudo");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("xtask has no parent directory"))?;
    // The debug build the integration tests use: the soak measures behaviour, not speed.
    step("building the soak, the agent and the load generator (cargo build -p tests --bins)");
    exec(
        Command::new("cargo")
            .args(["build", "-p", "tests", "--bins"])
            .current_dir(root)
            .env("PATH", &env.path),
    )?;
    step(&format!("soak: {} min", args.minutes));
    exec(
        Command::new(root.join("target/debug/shunt-soak"))
            .args(["--minutes", &args.minutes.to_string(), "--out"])
            .arg(root.join("target/soak"))
            .current_dir(root),
    )
}
