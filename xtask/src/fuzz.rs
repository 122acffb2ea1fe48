//! `cargo xtask fuzz [--smoke] [--runs N] [--target NAME]`: the cargo-fuzz targets in `fuzz/`
//! (libFuzzer, built with the pinned nightly), one after another, each on its corpus.
//!
//! Each target starts from the seeds committed in `fuzz/seeds/<target>` and grows its working
//! corpus in `fuzz/corpus/<target>` (not committed). A crash fails the task and leaves the input
//! in `fuzz/artifacts/<target>`; rerun it with `cargo +NIGHTLY fuzz run <target> <file>`.
//!
//! Built without a sanitizer (`-s none`): the parsers are safe Rust, where AddressSanitizer finds
//! nothing the language does not already check, and it would cost most of the executions. Debug
//! assertions (overflow checks included) stay on, as cargo-fuzz builds them by default.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::setup::{EBPF_NIGHTLY, Env, step};

/// The targets, in the order they run (see `fuzz/fuzz_targets/`).
pub const TARGETS: [&str; 4] = [
    "key_extraction",
    "protocol_detection",
    "routes_file",
    "h1_request_head",
];

/// How long each target runs with `--smoke` (CI).
const SMOKE_SECS: u64 = 30;

#[derive(Args)]
pub struct FuzzArgs {
    /// 30 s per target (what CI runs).
    #[arg(long, conflicts_with = "runs")]
    smoke: bool,
    /// Executions per target (default: 10 million).
    #[arg(long)]
    runs: Option<u64>,
    /// Only this target.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    target: Option<String>,
}

/// What one target's run did.
struct Outcome {
    target: &'static str,
    executions: u64,
    corpus: usize,
    secs: f64,
}

pub fn run(env: &Env, args: FuzzArgs) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let fuzz = root.join("fuzz");
    let limit = if args.smoke {
        format!("-max_total_time={SMOKE_SECS}")
    } else {
        format!("-runs={}", args.runs.unwrap_or(10_000_000))
    };
    step(&format!(
        "building the fuzz targets ({EBPF_NIGHTLY}, libFuzzer)"
    ));
    crate::setup::run(cargo_fuzz(env, &fuzz).args(["build", "-s", "none"]))?;
    let mut outcomes = Vec::new();
    for target in TARGETS {
        if args.target.as_deref().is_some_and(|t| t != target) {
            continue;
        }
        outcomes.push(run_target(env, &fuzz, target, &limit)?);
    }
    eprintln!("\n| target | executions | corpus (inputs) | time |\n|---|---|---|---|");
    for o in &outcomes {
        eprintln!(
            "| `{}` | {} | {} | {:.0} s |",
            o.target, o.executions, o.corpus, o.secs
        );
    }
    Ok(())
}

fn cargo_fuzz(env: &Env, fuzz: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg(format!("+{EBPF_NIGHTLY}"))
        .arg("fuzz")
        .current_dir(fuzz)
        .env("PATH", &env.path)
        // `cargo fuzz run` builds with `--config profile.release.debug="line-tables-only"`,
        // `cargo fuzz build` with full debug info: without the same setting for both, every run
        // after the build step compiled the agent a second time.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only")
        // The nightly, not rust-toolchain.toml's stable.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR");
    c
}

fn run_target(
    env: &Env,
    fuzz: &Path,
    target: &'static str,
    limit: &str,
) -> anyhow::Result<Outcome> {
    step(&format!("fuzzing {target} ({limit})"));
    let corpus = fuzz.join("corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    std::fs::create_dir_all(&corpus)?;
    let mut cmd = cargo_fuzz(env, fuzz);
    cmd.args(["run", "-s", "none", target])
        .arg(&corpus)
        .args(seeds.is_dir().then_some(&seeds))
        .args(["--", limit, "-print_final_stats=1", "-max_len=4096"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = cmd
        .spawn()
        .with_context(|| format!("running cargo fuzz for {target}"))?
        .wait_with_output()?;
    let secs = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed ({}): the input is in {}\n{}",
            out.status,
            fuzz.join("artifacts").join(target).display(),
            tail.join("\n")
        );
    }
    let executions = final_stat(&log, "stat::number_of_executed_units")
        .with_context(|| format!("{target}: no execution count in libFuzzer's output"))?;
    Ok(Outcome {
        target,
        executions,
        corpus: count_files(&corpus),
        secs,
    })
}

/// A `stat::name: value` line of `-print_final_stats=1`.
fn final_stat(log: &str, name: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        l.strip_prefix(name)?
            .trim_start_matches(':')
            .trim()
            .parse()
            .ok()
    })
}

fn count_files(dir: &PathBuf) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::final_stat;

    #[test]
    fn reads_libfuzzers_final_execution_count() {
        let log = "#2\tINITED\nstat::number_of_executed_units: 10000001\nstat::peak_rss_mb: 61\n";
        assert_eq!(
            final_stat(log, "stat::number_of_executed_units"),
            Some(10_000_001)
        );
        assert_eq!(
            final_stat("nothing", "stat::number_of_executed_units"),
            None
        );
    }
}
