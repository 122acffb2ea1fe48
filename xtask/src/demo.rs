//! `cargo xtask demo`: builds the agent and the demo binaries, then hands over to `shunt-demo`
//! (tests/src/bin/shunt-demo), which brings up a mini-cluster of network namespaces with the real
//! agent, shows keyed requests steered to a sandbox, and tears it all down.
//!
//! xtask cannot depend on the agent or tests crates (it must build before bpf-linker exists), so
//! this file only checks the machine, builds and execs.
//!
//! Run as a normal user, cargo builds as that user (root often has no rustup on its PATH) and
//! only the built `shunt-demo` is run with `sudo -E`, as aya's template does; as root it runs
//! directly. cargo itself never runs under sudo. The dev profile is used: it shares every
//! artifact with `cargo xtask test`, and the demo's few requests do not need an optimised build.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::setup::{Env, run as exec, step};

#[derive(Args)]
pub struct DemoArgs {
    /// Leave the mini-cluster up, and print how to call it by hand and how to remove it.
    #[arg(long, conflicts_with_all = ["down", "check"])]
    keep: bool,
    /// Remove a mini-cluster left up by `--keep` (or by an interrupted run).
    #[arg(long, conflicts_with = "check")]
    down: bool,
    /// Fail unless every request took the expected path (what `cargo xtask test` runs).
    #[arg(long)]
    check: bool,
    /// Use the demo binaries already built in DIR (shunt-demo, demo-app, shunt-under-test):
    /// no toolchain set-up, no build.
    #[arg(long, value_name = "DIR")]
    pub prebuilt: Option<PathBuf>,
}

/// The binaries the demo runs: the orchestrator, the app, and the agent (the `shunt` entry point).
const BINS: [&str; 3] = ["shunt-demo", "demo-app", "shunt-under-test"];

/// Checks, before anything else, that this machine can run the demo. Errors are one line: what is
/// missing and how to fix it.
pub fn preflight() -> anyhow::Result<()> {
    if !is_root() && !on_path("sudo") {
        bail!(
            "the demo needs root to run (network namespaces, a cgroup, eBPF) and this user has \
             no `sudo`: install sudo (as root: `apt-get install sudo`, or `cargo xtask setup`), \
             or run `cargo xtask demo` as root"
        );
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup2 = mountinfo.lines().any(|l| {
        l.split_once(" - ")
            .is_some_and(|(_, r)| r.split_whitespace().next() == Some("cgroup2"))
    });
    if !cgroup2 {
        bail!(
            "no cgroup v2 mount: mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or \
             boot with systemd.unified_cgroup_hierarchy=1"
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "no kernel BTF (/sys/kernel/btf/vmlinux): boot a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (Debian's stock kernels are)"
        );
    }
    // `cargo xtask setup` installs ip and nsenter with apt-get; without apt-get, say so now.
    if !on_path("apt-get") {
        for (tool, pkg) in [("ip", "iproute2"), ("nsenter", "util-linux")] {
            if !on_path(tool) {
                bail!("`{tool}` not found: install {pkg} with your package manager");
            }
        }
    }
    Ok(())
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string))
        })
        .is_some_and(|euid| euid == "0")
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(tool).is_file())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .join("target")
        })
}

/// A `cargo` whose environment matches a developer's shell, so its artifacts are shared with
/// their own `cargo build`s instead of rebuilt: build scripts that track an env var are rerun
/// whenever it changes (aya-build tracks PATH; ring's tracks CARGO_MANIFEST_DIR and CARGO_PKG_*,
/// which `cargo run` sets for xtask itself).
fn plain_cargo(env: &Env) -> Command {
    let mut cmd = Command::new("cargo");
    let current = std::env::var_os("PATH").unwrap_or_default();
    let linker_dir = std::env::split_paths(&env.path).next();
    let has_linker_dir =
        linker_dir.is_some_and(|d| std::env::split_paths(&current).any(|p| p == d));
    cmd.env("PATH", if has_linker_dir { &current } else { &env.path });
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || matches!(
                &*k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(&*k);
        }
    }
    cmd
}

/// Builds the demo's binaries (dev profile) with `cmd` (a `cargo`) and returns their directory.
fn build(mut cmd: Command) -> anyhow::Result<PathBuf> {
    cmd.args(["build", "-p", "tests"]);
    for b in BINS {
        cmd.args(["--bin", b]);
    }
    exec(&mut cmd)?;
    Ok(target_dir().join("debug"))
}

pub fn run(env: Option<&Env>, args: DemoArgs) -> anyhow::Result<()> {
    let bins = match (&args.prebuilt, env) {
        (Some(dir), _) => dir.clone(),
        (None, Some(env)) => {
            step("building the agent, its eBPF programs and the demo apps…");
            build(plain_cargo(env))?
        }
        (None, None) => bail!("no build environment: run `cargo xtask setup` first"),
    };
    let mode = if args.keep {
        Some("--keep")
    } else if args.down {
        Some("--down")
    } else if args.check {
        Some("--check")
    } else {
        None
    };
    let mut cmd = launch(is_root(), &bins, mode);
    // Replace this process: Ctrl-C then reaches shunt-demo directly, which tears down.
    let err = cmd.exec();
    Err(err).with_context(|| format!("running {}", bins.join("shunt-demo").display()))
}

/// The built demo's command line: itself as root, else through `sudo -E` (the privileges are
/// raised for the built binary only, never for cargo).
fn launch(root: bool, bins: &Path, mode: Option<&str>) -> Command {
    let demo = bins.join("shunt-demo");
    let mut cmd = if root {
        Command::new(&demo)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&demo);
        c
    };
    cmd.args(mode);
    cmd
}

/// `cargo xtask test`'s demo step: runs `shunt-demo --check` and checks its printed paths too.
pub fn test_step(env: &Env) -> anyhow::Result<()> {
    // The same environment as the test steps before it, so this build finds their artifacts
    // (`cargo test -p tests` has built these binaries already).
    let mut cargo = Command::new("cargo");
    cargo.env("PATH", &env.path);
    let bins = build(cargo)?;
    let out = Command::new(bins.join("shunt-demo"))
        .arg("--check")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running shunt-demo --check")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        bail!("shunt-demo --check failed ({})", out.status);
    }
    check_output(&stdout)
}

/// Asserts on the table the demo prints: one row per request, `KEY  PATH`.
fn check_output(stdout: &str) -> anyhow::Result<()> {
    let rows = |key: &str| -> Vec<&str> {
        stdout
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(key) && l.contains('→'))
            .collect()
    };
    let want = |key: &str, path: &str, why: &str| -> anyhow::Result<()> {
        let rows = rows(key);
        if rows.is_empty() {
            bail!("the demo printed no row for key {key}");
        }
        if let Some(bad) = rows.iter().find(|r| !r.contains(path)) {
            bail!("{why}: expected `{path}`, the demo printed `{bad}`");
        }
        Ok(())
    };
    want(
        "pr-42",
        "frontend → reviews v2 (sandbox) → ratings v1 (baseline)",
        "keyed requests must go through reviews v2, then baseline ratings",
    )?;
    want(
        "(none)",
        "frontend → reviews v1 (baseline) → ratings v1 (baseline)",
        "requests without a key must stay on baseline",
    )?;
    if let Some(bad) = rows("(none)").iter().find(|r| r.contains("sandbox")) {
        bail!("a request without a key reached a sandbox: `{bad}`");
    }
    want(
        "pr-7",
        "frontend → reviews v1 (baseline) → ratings v1 (baseline)",
        "a key without a fork must stay on baseline",
    )?;
    // The sandbox that drops the key: Shunt carries it on to the ratings sandbox. Skipped (and
    // said so by the demo) only with an agent that has no key injection.
    if !stdout.contains("check skip: pr-43") {
        want(
            "pr-43",
            "frontend → reviews v3 (sandbox, drops the key) → ratings v2 (sandbox, key added by Shunt)",
            "the reviews sandbox drops the key; Shunt must add it so the ratings sandbox serves",
        )?;
    }
    if !stdout.contains("key_matched") {
        bail!("the demo's decision log shows no key_matched decision");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_output, launch, plain_cargo};

    #[test]
    fn cargo_never_runs_under_sudo() {
        let env = crate::setup::Env {
            path: "/opt/linker-bin:/usr/bin".into(),
        };
        let build = plain_cargo(&env);
        assert_eq!(build.get_program(), "cargo", "the build runs as the user");
        let bins = std::path::Path::new("/w/target/debug");
        let user = launch(false, bins, Some("--keep"));
        assert_eq!(user.get_program(), "sudo");
        let args: Vec<_> = user.get_args().collect();
        assert_eq!(
            args,
            ["-E", "/w/target/debug/shunt-demo", "--keep"],
            "only the built demo is raised"
        );
        assert!(!args.iter().any(|a| a.to_string_lossy().contains("cargo")));
        let root = launch(true, bins, None);
        assert_eq!(root.get_program(), "/w/target/debug/shunt-demo");
        assert_eq!(root.get_args().count(), 0);
    }

    const GOOD: &str = "\
key      path
(none)   frontend → reviews v1 (baseline) → ratings v1 (baseline)
pr-42    frontend → reviews v2 (sandbox) → ratings v1 (baseline)
pr-7     frontend → reviews v1 (baseline) → ratings v1 (baseline)
pr-43    frontend → reviews v3 (sandbox, drops the key) → ratings v2 (sandbox, key added by Shunt)

  shop/reviews   sandbox   key_matched     → reviews-v2 (198.18.4.2:8080)
";

    #[test]
    fn accepts_the_expected_paths() {
        check_output(GOOD).unwrap();
    }

    #[test]
    fn rejects_a_keyed_request_on_baseline() {
        let bad = GOOD.replace(
            "pr-42    frontend → reviews v2 (sandbox)",
            "pr-42    frontend → reviews v1 (baseline)",
        );
        assert!(
            check_output(&bad)
                .unwrap_err()
                .to_string()
                .contains("reviews v2")
        );
    }

    #[test]
    fn rejects_an_unkeyed_request_in_the_sandbox() {
        let bad = GOOD.replace(
            "(none)   frontend → reviews v1 (baseline)",
            "(none)   frontend → reviews v2 (sandbox)",
        );
        assert!(check_output(&bad).is_err());
    }

    #[test]
    fn rejects_the_dropped_key_landing_on_baseline() {
        let bad = GOOD.replace(
            "ratings v2 (sandbox, key added by Shunt)",
            "ratings v1 (baseline)",
        );
        assert!(
            check_output(&bad)
                .unwrap_err()
                .to_string()
                .contains("drops the key")
        );
    }

    #[test]
    fn rejects_missing_rows() {
        assert!(check_output("key      path\n").is_err());
    }
}
